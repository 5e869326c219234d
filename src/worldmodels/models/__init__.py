"""World-model parts: V (ConvVAE), M (MDNRNN), C (LinearController)."""

from worldmodels.models.controller import LinearController
from worldmodels.models.mdnrnn import MDNRNN, MDNOutput
from worldmodels.models.vae import ConvVAE

__all__ = ["ConvVAE", "MDNRNN", "MDNOutput", "LinearController"]
