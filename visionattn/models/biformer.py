"""BiFormer (CVPR 2023): bi-level routing attention backbones."""
