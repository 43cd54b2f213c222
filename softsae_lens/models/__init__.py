"""Language models, offline: local GGUF files and Hugging Face folders as bridges, SmolLM2, MiniLM."""

from softsae_lens.models.load import check_model_choice, load_model, load_model_and_hook

__all__ = ["check_model_choice", "load_model", "load_model_and_hook"]
