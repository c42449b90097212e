"""Errors a user can cause and fix: the CLI prints them as one line and exits with code 2."""


class CvengineError(Exception):
    """A problem with the user's input (recipe, data, paths). The message names the file, record or
    recipe key at fault and what to do about it."""


class RecipeError(CvengineError):
    pass


class DataError(CvengineError):
    pass


class TrainingDiverged(CvengineError):
    """The loss or the weights became NaN or inf: training stopped, nothing non-finite was saved."""
