"""Eager PyTorch backend: the reference the others are compared with."""

import numpy as np
import torch

from polynl_deploy.backends.base import Runner, TensorSpec


class TorchRunner(Runner):
    """Runs an nn.Module in eval mode; inputs are passed positionally in ``input_specs`` order."""

    name = "eager"

    def __init__(self, model: torch.nn.Module, input_specs: list[TensorSpec], output_names: list[str],
                 device: str = "cpu") -> None:
        self.model = model.eval().to(device)
        self.device = device
        self.model_label = f"{type(model).__name__} (PyTorch)"
        self.input_specs = list(input_specs)
        self.output_names = list(output_names)

    @torch.inference_mode()
    def _infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        args = [torch.from_numpy(feed[s.name]).to(self.device) for s in self.input_specs]
        result = self.model(*args)
        outputs = result if isinstance(result, (tuple, list)) else (result,)
        # NumPy has no bfloat16: such outputs come back as float32.
        return {name: (out.float() if out.dtype == torch.bfloat16 else out).detach().cpu().numpy()
                for name, out in zip(self.output_names, outputs)}
