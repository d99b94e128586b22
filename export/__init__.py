"""Export stage: merge a LoRA adapter, write GGUF (llama.cpp ``bert`` layout) and the Ollama Modelfile."""
