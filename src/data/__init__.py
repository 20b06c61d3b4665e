"""Image-translation data: unpaired and paired folders, the synthetic shapes dataset.

Import the DataModules from their modules (src.data.unpaired, src.data.paired,
src.data.shapes); this package file stays empty so that `python -m src.data.download` does not
pay for importing torch and Lightning.
"""
