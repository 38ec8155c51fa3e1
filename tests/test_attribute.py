"""``llmcli attribute`` against an independent computation with transformers.

The reference is written here from the definitions inseq uses (captum's InputXGradient,
Saliency and Occlusion on the input embeddings, inseq's aggregation): transformers' model of
the same checkpoint, in float64, differentiated through ``inputs_embeds`` with autograd,
and run once per left-out token for occlusion. llmcli computes with its own models in float32
through a hook on the embedding module; the two must agree to float32 precision.
"""

from __future__ import annotations

import copy
import io
import json
import shutil
import warnings
from pathlib import Path

import pytest
import torch

from test_families import make_family_checkpoint

transformers = pytest.importorskip("transformers")

REPO = Path(__file__).resolve().parents[1]
BUNDLED = REPO / "models" / "shakespeare"
PROMPT = "Once upon a time there was a little girl"
FAMILY_CASES = ["mistral_window", "qwen2_tied_window", "qwen3_bias_tied_window", "gpt2", "neox_parallel"]
#: float32 (llmcli) against float64 (transformers): values are O(0.1-10)
ATOL = 2e-4


# ----------------------------------------------------------------------------- the reference
def reference(hf, ids, target, contrast=None, function="logprob", unk_id=0, eos_id=None):
    """inseq's numbers computed with transformers (float64): a dict method → (values, scores)."""
    hf = copy.deepcopy(hf).double()
    emb = hf.get_input_embeddings()
    x = emb(torch.tensor([ids])).detach()                                          # (1, T, D)

    def g(z, i):
        if function == "logprob":
            return torch.log_softmax(z, -1)[:, i]
        if function == "probability":
            return torch.softmax(z, -1)[:, i]
        return z[:, i]

    def f(e):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            z = hf(inputs_embeds=e, use_cache=False).logits[:, -1]
        out = g(z, target)
        return out - g(z, contrast) if contrast is not None else out

    e = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(f(e).sum(), e)
    ixg = (x * grad)[0]
    out = {"input_x_gradient": (ixg.sum(-1), ixg.norm(dim=-1) / ixg.norm(dim=-1).sum()),
           "saliency": (grad[0].norm(dim=-1), grad[0].norm(dim=-1) / grad[0].norm(dim=-1).sum())}
    with torch.no_grad():
        f0 = f(x)[0]
        unk = emb(torch.tensor([unk_id]))[0]
        occ, zero, removed = [], [], []
        for i in range(len(ids)):
            e = x.clone()
            if ids[i] != eos_id:
                e[0, i] = unk
            occ.append(f0 - f(e)[0])
            e = x.clone()
            e[0, i] = 0
            zero.append(f0 - f(e)[0])
            if len(ids) > 1:
                rest = torch.tensor([[t for j, t in enumerate(ids) if j != i]])
                removed.append(f0 - f(emb(rest))[0])
    occ = torch.stack(occ)
    out["occlusion"] = (occ, occ.abs())
    out["occlusion_zero"] = (torch.stack(zero), torch.stack(zero).abs())
    if removed:
        out["occlusion_remove"] = (torch.stack(removed), torch.stack(removed).abs())
    out["f"] = float(f0)
    return out


def worst(doc: dict, values, scores) -> float:
    ours_v = torch.tensor([t["value"] for t in doc["tokens"]], dtype=torch.float64)
    ours_s = torch.tensor([t["score"] for t in doc["tokens"]], dtype=torch.float64)
    return max(float((ours_v - values).abs().max()), float((ours_s - scores).abs().max()))


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def bundled_hf():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return transformers.AutoModelForCausalLM.from_pretrained(str(BUNDLED), dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def bundled():
    from llmcli.tokenizer import load_tokenizer
    from llmcli.weights import load_model

    model, _ = load_model(BUNDLED)
    return model, load_tokenizer(BUNDLED)


@pytest.fixture(scope="module", params=FAMILY_CASES)
def family(request, tmp_path_factory, tiny_tokenizer_model):
    """``(case, model_dir, hf_model, ids)``: a tiny random checkpoint of each family with the
    320-piece test tokenizer."""
    from llmcli.tokenizer import load_tokenizer

    model_dir, hf = make_family_checkpoint(tmp_path_factory.mktemp("attr"), request.param, vocab_size=320)
    shutil.copyfile(tiny_tokenizer_model, model_dir / "tokenizer.model")
    return request.param, model_dir, hf, load_tokenizer(model_dir).encode(PROMPT)


# ----------------------------------------------------------------------------- the numbers
def test_bundled_model_every_method_matches_the_reference(bundled, bundled_hf, capsys):
    from llmcli.inspection.attribution import attribute, resolve_token

    model, tok = bundled
    ids = tok.encode("ROMEO:\nWhat light through yonder window")
    a = attribute(model, tok, ids)                                  # default: arg-max, logprob
    target = a.target["id"]
    assert a.default_target and a.target["rank"] == 1
    ref = reference(bundled_hf, ids, target, unk_id=tok.unk_id, eos_id=tok.eos_id)
    assert abs(a.f - ref["f"]) < 1e-5
    figures = {}
    for method in ("input_x_gradient", "saliency", "occlusion"):
        doc = attribute(model, tok, ids, method=method).to_dict()
        figures[method] = worst(doc, *ref[method])
        assert figures[method] < ATOL, (method, figures[method])
        assert doc["target"]["id"] == target
    # inseq's gradient scores are L2 norms normalised to sum 1
    doc = a.to_dict()
    assert abs(sum(t["score"] for t in doc["tokens"]) - 1) < 1e-9
    assert all(t["score"] >= 0 for t in doc["tokens"])
    assert doc["ranking"][0] == max(doc["tokens"], key=lambda t: t["score"])["position"]
    # the other baselines and a contrastive, chosen target
    for baseline in ("zero", "remove"):
        doc = attribute(model, tok, ids, method="occlusion", baseline=baseline).to_dict()
        figures[f"occlusion {baseline}"] = worst(doc, *ref[f"occlusion_{baseline}"])
        assert figures[f"occlusion {baseline}"] < ATOL
    t2 = resolve_token(tok, ids, " doth", "--target", 2048)
    c2 = resolve_token(tok, ids, " is", "--contrast", 2048)
    assert tok.piece(t2) == "▁doth" and tok.piece(c2) == "▁is"
    for function in ("logit", "probability", "logprob"):
        ref2 = reference(bundled_hf, ids, t2, c2, function=function, unk_id=tok.unk_id)
        for method in ("input_x_gradient", "occlusion"):
            doc = attribute(model, tok, ids, method=method, target=t2, contrast=c2,
                            function=function).to_dict()
            figures[f"{method} contrast {function}"] = d = worst(doc, *ref2[method])
            assert d < ATOL, (method, function, d)
            assert abs(doc["f"] - ref2["f"]) < 1e-5
    a = attribute(model, tok, ids, target=t2, contrast=c2)
    assert a.inseq_fn == "contrast_logits_diff" and a.f_label == "logit(target) - logit(contrast)"
    with capsys.disabled():
        print("\nattribute, bundled model, max |Δ| vs transformers float64: "
              + ", ".join(f"{k} {v:.1e}" for k, v in figures.items()))


def test_every_family_through_the_cli(family, cli):
    case, model_dir, hf, ids = family
    from llmcli.tokenizer import load_tokenizer

    tok = load_tokenizer(model_dir)
    with torch.no_grad():
        z = hf(input_ids=torch.tensor([ids])).logits[0, -1]
    target = int(z.argmax())
    ref = reference(hf, ids, target, unk_id=tok.unk_id, eos_id=tok.eos_id)
    for method in ("input_x_gradient", "occlusion"):
        code, out, err = cli("attribute", "-m", model_dir, PROMPT, "--method", method, "--json")
        assert code == 0, err
        doc = json.loads(out)
        assert doc["target"]["id"] == target and [t["id"] for t in doc["tokens"]] == ids
        d = worst(doc, *ref[method])
        assert d < ATOL, (case, method, d)
    # contrastive, through the CLI, plain output
    contrast = int(z.argsort()[-2])
    ref = reference(hf, ids, target, contrast, function="logit", unk_id=tok.unk_id)
    code, out, err = cli("attribute", "-m", model_dir, PROMPT, "--target", tok.piece(target),
                         "--contrast", tok.piece(contrast), "--json")
    assert code == 0, err
    assert worst(json.loads(out), *ref["input_x_gradient"]) < ATOL
    code, out, err = cli("attribute", "-m", model_dir, PROMPT)
    assert code == 0 and "rank" in out and "input_x_gradient" in out and "\x1b[" not in out, err


# ----------------------------------------------------------------------------- output
def test_plain_and_coloured_output(bundled, monkeypatch):
    from rich.console import Console

    from llmcli.inspection.attribution import attribute
    from llmcli.render.attribution import attribution_plain, attribution_rich, value_rgb

    model, tok = bundled
    ids = tok.encode("To be, or not to")
    a = attribute(model, tok, ids, method="occlusion")
    plain = attribution_plain(a)
    lines = plain.splitlines()
    assert lines[0].startswith("occlusion · f = log p(target) = ") and "baseline unk" in lines[0]
    assert lines[2].startswith("<s>[") and lines[2].count("[") == len(ids)   # one line here
    ranked = [int(line.split()[1]) for line in lines[4:4 + len(ids)]]
    assert lines[3].split() == ["rank", "pos", "id", "piece", "value", "score"]
    assert ranked == a.to_dict()["ranking"]
    assert max(len(line) for line in lines) <= 80
    # diverging colours as the pictures draw them: blue for negative, red for positive, white at 0
    r, g, b = value_rgb(-1, 1)
    assert b > 200 and r < 100
    r, g, b = value_rgb(1, 1)
    assert r > 200 and b < 100
    assert value_rgb(0, 1) == (255, 255, 255) and value_rgb(0.5, 1) != value_rgb(1, 1)
    buf = io.StringIO()
    attribution_rich(a, Console(file=buf, force_terminal=True, color_system="truecolor", width=80))
    text = buf.getvalue()
    assert "\x1b[" in text and "red raises f, blue lowers f" in text
    strongest = max(a.tokens, key=lambda t: abs(t["value"]))
    r, g, b = value_rgb(strongest["value"], abs(strongest["value"]))
    # full colour on the largest |value|; rich caches a style's codes from the first console that
    # rendered it, so after a 256-colour console in this process it may be the 256-colour one
    from rich.color import Color, ColorSystem

    eight_bit = Color.from_rgb(r, g, b).downgrade(ColorSystem.EIGHT_BIT).number
    assert f"48;2;{r};{g};{b}" in text or f"48;5;{eight_bit}m" in text
    buf = io.StringIO()
    attribution_rich(a, Console(file=buf, force_terminal=True, no_color=True, width=80))
    assert "[" in buf.getvalue() and "48;2" not in buf.getvalue()


def test_bad_input_is_one_line(cli, tmp_path):
    def one_line(code, out, err, want_code, *needles):
        assert code == want_code, (code, err)
        assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
        for n in needles:
            assert n in err, (n, err)
        assert out == ""

    one_line(*cli("attribute", "To be", "--target", " xyzzy"), 2, "--target", "not one")
    one_line(*cli("attribute", "To be", "--contrast", " qqqq"), 2, "--contrast")
    one_line(*cli("attribute", "To be", "--target", " be", "--contrast", "▁be"), 2, "--contrast")
    one_line(*cli("attribute", "To be", "--method", "lime"), 2, "--method")
    one_line(*cli("attribute", "To be", "--baseline", "zero"), 2, "--baseline")
    one_line(*cli("attribute", "To be", "--attributed-fn", "entropy"), 2, "--attributed-fn")
    one_line(*cli("attribute", "--no-bos", ""), 2, "TEXT")
    one_line(*cli("attribute", "To", "--no-bos", "--method", "occlusion", "--baseline", "remove"),
             2, "--baseline remove")
    missing = tmp_path / "no" / "such" / "dir" / "a.svg"
    one_line(*cli("attribute", "To be", "--save-svg", missing), 1, "--save-svg")
    assert not missing.parent.exists()


def test_pictures_are_written_and_well_formed(cli, tmp_path):
    import xml.etree.ElementTree as ET
    from html.parser import HTMLParser

    svg, page = tmp_path / "a.svg", tmp_path / "a.html"
    code, out, err = cli("attribute", "ROMEO: What light", "--save-svg", svg, "--save-html", page,
                         "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert f"saved SVG picture to {svg}" in err and f"saved HTML picture to {page}" in err
    root = ET.parse(svg).getroot()
    assert root.tag.endswith("svg")
    texts = "".join(root.itertext())
    for t in doc["tokens"]:
        assert t["piece"].replace("▁", " ").strip() in texts.replace("\xa0", " ")
    assert f"{doc['tokens'][0]['value']:+.4f}" in texts
    HTMLParser().feed(page.read_text(encoding="utf-8"))
    assert "light" in page.read_text(encoding="utf-8")
    # an existing file is kept without --force
    code, out, err = cli("attribute", "ROMEO:", "--save-svg", svg)
    assert code == 1 and "--save-svg" in err and out == ""
