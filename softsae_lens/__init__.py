from softsae_lens.soft_topk import soft_topk

__all__ = ["soft_topk"]
