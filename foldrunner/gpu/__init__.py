"""GPUs: the NVML inventory, slots and their drain, the GPU memory watch."""
