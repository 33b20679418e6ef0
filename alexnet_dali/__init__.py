"""alexnet-dali: a paper-faithful AlexNet trained from NVIDIA DALI pipelines, with DDP under torchrun."""

__version__ = "0.1.0"


def __getattr__(name):
    # The API pulls in DALI and torch: import it on first use, so `alexnet_dali.model` stays light.
    if name == "AlexNet":
        from .api import AlexNet

        return AlexNet
    if name == "prepare_dataset":
        from .prepare import prepare_dataset

        return prepare_dataset
    raise AttributeError(f"module 'alexnet_dali' has no attribute {name!r}")


__all__ = ["AlexNet", "prepare_dataset", "__version__"]
