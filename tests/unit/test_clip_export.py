"""models/clip-vit-b-32/export.py without weights: its tokenizer.json tokenizes as OpenCLIP's own tokenizer does,
and the card it writes loads. Needs open_clip_torch (not a lookalike dependency): skipped without it; the
export's README has the venv that runs it (`export.py --random` checks the ONNX towers against PyTorch too)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

EXPORT = Path(__file__).resolve().parents[2] / "models" / "clip-vit-b-32" / "export.py"


def _export_module():
    spec = importlib.util.spec_from_file_location("clip_export", EXPORT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_tokenizer_matches_open_clips():
    open_clip = pytest.importorskip("open_clip")
    export = _export_module()
    tokenizer = export.clip_tokenizer(Path(open_clip.tokenizer.default_bpe()))
    prompts = [*export.PROMPTS, "The QUICK brown fox's 2nd jump...", "the café\u2019s “special” ﬁsh"]
    agreement = export.tokenizer_agreement(tokenizer, open_clip.get_tokenizer("ViT-B-32"), prompts)
    assert agreement == {"prompts": len(prompts), "mismatches": []}
    assert tokenizer.get_vocab_size() == 49408


def test_a_pretrained_tag_is_refused_before_anything_downloads(tmp_path, capsys):
    export = _export_module()
    with pytest.raises(SystemExit):
        export.main(["--weights", "openai", "--output", str(tmp_path)])
    assert "is not a file" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())
