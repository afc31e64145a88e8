"""Where models live: the cache (`$PK_CACHE_DIR`, or `.cache/` at the project root) and the
public pre-trained model shipped inside the package (model/shipped/)."""
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CACHE_DIR = Path(os.environ.get("PK_CACHE_DIR", ROOT / ".cache"))
PRETRAINED_DIR = CACHE_DIR / "pretrained"
TOKENIZER_PATH = PRETRAINED_DIR / "tokenizer.json"
PRETRAINED_MODEL = PRETRAINED_DIR / "model.safetensors"
CENTRAL_MODEL = CACHE_DIR / "central" / "model.safetensors"
SHIPPED_DIR = Path(__file__).resolve().parent / "shipped"
SHIPPED_MODEL = SHIPPED_DIR / "model.int8.safetensors"
SHIPPED_TOKENIZER = SHIPPED_DIR / "tokenizer.json"

