"""toolkit: transfer-learning, export and edge deployment for image classifiers.

Importing the package is deliberately cheap (no TensorFlow): apps that embed
`toolkit.runtime` pay only for numpy, Pillow and their chosen inference engine.
"""

__version__ = "0.1.0"
