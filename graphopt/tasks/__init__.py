"""Built-in offline tasks: a dataset, a trained model and its metric, nothing downloaded.

Each task module offers callables a recipe can name as ``package.module:callable``:
``trained_model()`` (trains once, then loads from the cache, verified by ``_cache``), ``data()``
(a ``graphopt.data.TaskData``) and its metric. ``digits`` is scikit-learn's bundled handwritten
digits; ``fashion_mnist`` the full Fashion-MNIST from the Debian package; ``minilm`` the real
all-MiniLM-L6-v2 scored on the Lee corpus's human similarity judgments.
"""

__all__ = ["digits", "fashion_mnist", "minilm"]
