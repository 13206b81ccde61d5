"""Models: the built-in GPT, a scalar head for reward/value models, the Hugging Face adapter, and builders."""
