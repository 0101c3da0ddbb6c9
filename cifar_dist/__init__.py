"""cifar-dist: the PyTorch CIFAR-10 tutorial, grown into a distributed, resumable, tracked toolkit."""
import os

# Measured on 2 vCPUs: OpenMP threads that spin-wait ran a training process 4× slower whenever
# anything else shared the cores. Must be set before torch starts its thread pool.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
