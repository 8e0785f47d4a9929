"""The `make demo` job: build the default model and classify one random cloud."""

import time

import torch

import pcea


def main() -> None:
    torch.manual_seed(0)
    model = pcea.build_model("pcea").eval()
    points = torch.rand(1, 1024, 3) * 2 - 1  # (B, N, 3)
    with torch.no_grad():
        start = time.perf_counter()
        probs = model(points).softmax(-1)  # (1, 40)
        elapsed = time.perf_counter() - start
    print(f"pcea model: {sum(p.numel() for p in model.parameters()):,} parameters")
    print(f"one forward pass of 1 x 1024 points: {elapsed * 1000:.0f} ms")
    print(f"untrained prediction: class {int(probs.argmax())} with p={float(probs.max()):.3f}")


if __name__ == "__main__":
    main()
