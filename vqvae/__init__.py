"""VQ-VAE image tokenizer: model, EMA quantiser, checkpoint I/O and the `api` used by other modules."""
from vqvae.api import code2img, img2code, load_vqvae, save_vqvae, vqvae_fingerprint
from vqvae.config import VQVAEConfig, cogview_config
from vqvae.model import VQVAE

__all__ = ["VQVAE", "VQVAEConfig", "cogview_config", "load_vqvae", "save_vqvae", "img2code", "code2img",
           "vqvae_fingerprint"]
