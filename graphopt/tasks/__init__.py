"""Built-in offline tasks: a dataset, a trained model and its metric, nothing downloaded.

Each task module offers callables a recipe can name as ``package.module:callable``:
``trained_model()`` (trains once, then loads from the cache), ``data()`` (a
``graphopt.data.TaskData``) and ``accuracy(model)``. ``graphopt.tasks.digits`` is
scikit-learn's bundled handwritten digits.
"""

__all__ = ["digits"]
