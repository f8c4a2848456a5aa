"""giftjax: GIFT, GAC and RL fine-tuning baselines for LLMs in JAX/Flax."""

__version__ = "0.1.0"
