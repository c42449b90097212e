"""Scale-out around the engine: Ray Train (`ray.py`) and Ray Tune (`tune.py`). Both need
`pip install "cvengine[ray]"`; nothing here imports Ray until it is used."""
