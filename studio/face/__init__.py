"""Faces: the 68-point layout, landmark backends, head pose, normalization and mouth PCA."""
