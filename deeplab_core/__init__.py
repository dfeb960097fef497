"""DeepLab semantic segmentation: models, data readers, training/evaluation engine, dense CRF.

This package is a plain library: it imports none of dvc, mlflow, prefect or great_expectations.
"""

__version__ = "0.1.0"
