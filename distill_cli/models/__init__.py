"""Loading models, building students, forward passes, embedders, ONNX models."""
