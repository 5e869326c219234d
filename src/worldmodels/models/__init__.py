"""World-model parts: V (ConvVAE), M (MDNRNN), C (LinearController, or MLPController with a hidden layer)."""

from worldmodels.models.controller import LinearController, MLPController
from worldmodels.models.mdnrnn import MDNRNN, MDNOutput
from worldmodels.models.vae import ConvVAE

__all__ = ["ConvVAE", "MDNRNN", "MDNOutput", "LinearController", "MLPController"]
