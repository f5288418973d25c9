"""ONNX export: the PolyNL custom op, its schema and function body."""
