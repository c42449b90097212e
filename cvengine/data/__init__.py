"""COCO parsing, samples, augmentation and the demo data set."""
