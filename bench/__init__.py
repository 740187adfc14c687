"""medauc-bench: an MLflow-tracked benchmark of Deep AUC Maximization on MedMNIST."""
__version__ = "0.1.0"
