# What the GPU conformance kit runs against; read by conformance.sh and build_wheelhouse.sh.
# diffusion-pipe's HEAD when the kit was written ("fix Wan i2v and flf2v"), the commit
# reference/diffusion-pipe.md was read from.
DIFFUSION_PIPE_REPO=https://github.com/tdrussell/diffusion-pipe
DIFFUSION_PIPE_COMMIT=8f83dbf25d03219df705570ec03e62be04bc402f
# The submodules the flux path imports at start-up: utils/dataset.py and models/base.py put
# submodules/ComfyUI on sys.path and import comfy and comfy_api; utils/patches.py (imported
# by train.py for every model) imports hyvideo from submodules/HunyuanVideo. The others
# (Cosmos, HiDream, LTX_Video, Lumina_2, OmniGen2, HunyuanImage-2.1, flow) serve other model
# types and stay out of the kit.
DIFFUSION_PIPE_SUBMODULES="submodules/ComfyUI submodules/HunyuanVideo"
# requirements.txt pins it; a newer DeepSpeed is not what diffusion-pipe was written for.
DEEPSPEED_VERSION=0.18.4
# Everything carried to the GPU machine must stay under 64 MiB; wheels + sources get 55.
WHEELHOUSE_LIMIT_MIB=55
