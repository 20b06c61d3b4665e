"""The datasets: unpaired and paired image folders, labelled images (class folders, MNIST,
CIFAR-10), time series, and the synthetic shapes.

Import the DataModules from their modules (src.data.unpaired, src.data.paired,
src.data.labelled, src.data.shapes, ...); this package file stays empty so that `python -m src.data.download` does not
pay for importing torch and Lightning.
"""
