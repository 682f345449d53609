"""miniplm: refine a pretraining corpus with a teacher LM (MiniPLM difference sampling)
and train students on what is kept."""

__version__ = "0.1.0"
