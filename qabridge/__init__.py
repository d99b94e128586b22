"""qabridge: extractive QA with BERT-family encoders, trained with LoRA, served by llama.cpp/Ollama."""

__version__ = "0.1.0"
