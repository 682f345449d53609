"""The tiny student and teacher the distillation-loss tests share, and a batch of token rows."""

import torch

from miniplm.models.loading import load_model
from miniplm.training.teacher import Teacher

VOCAB = 300


def student_and_teacher(tiny_models, student_dtype: str, sharpen: float):
    """The tiny Qwen2 as student (in `student_dtype`), the tiny Llama as teacher with its output layer
    scaled by `sharpen` (random weights give a nearly flat distribution), and 2 rows of 25 tokens."""
    torch.manual_seed(0)
    student = load_model(tiny_models["reference"], student_dtype, "cpu")
    teacher = Teacher(tiny_models["teacher"], VOCAB, "float32", "cpu")
    with torch.no_grad():
        teacher.model.get_output_embeddings().weight.mul_(sharpen)
    return student, teacher, torch.randint(3, VOCAB, (2, 25))
