"""LoRA adapters round-trip through Hugging Face peft: plmkit -> peft on transformers, and back."""

from __future__ import annotations

import peft
import pytest
import torch
import transformers

import plmkit
from plmkit.interop.peft_format import export_peft_lora, import_peft_lora
from plmkit.models.bert import BertConfig, BertModel
from plmkit.models.gpt import GPT2Config, gpt2_lm
from plmkit.models.llama import LlamaConfig, llama_lm
from plmkit.peft import LoRAConfig, adapter_parameters, apply_peft

torch.set_num_threads(1)  # tiny matmuls run faster on one thread than contending for the cores


def tiny(family: str) -> torch.nn.Module:
    torch.manual_seed(0)
    if family == "gpt2":
        return gpt2_lm(GPT2Config(vocab_size=97, max_positions=32, d_model=32, num_layers=2, num_heads=4))
    if family == "llama":
        return llama_lm(LlamaConfig(vocab_size=97, max_positions=32, d_model=32, num_layers=2, num_heads=4,
                                    num_kv_heads=2, d_ff=48))
    return BertModel(BertConfig(vocab_size=97, d_model=32, num_layers=2, num_heads=4, d_ff=48,
                                max_positions=32, dropout=0.0, attention_dropout=0.0, add_pooler=False))


HF_CLASSES = {"gpt2": "GPT2LMHeadModel", "llama": "LlamaForCausalLM", "bert": "BertModel"}
# plmkit targets and the peft target_modules that adapt the same weights.
TARGETS = {
    "gpt2": ("q_proj,v_proj,up_proj", ["c_attn", "c_fc"]),
    "llama": ("q_proj,v_proj,down_proj", ["q_proj", "v_proj", "down_proj"]),
    "bert": ("q_proj,v_proj,o_proj", ["query", "value", "attention.output.dense"]),
}


def hf_out(model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    out = model(input_ids=ids, attention_mask=mask)
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(1, 97, (2, 9), generator=torch.Generator().manual_seed(4))
    return ids, torch.ones_like(ids)


@pytest.mark.parametrize("family", ["gpt2", "llama", "bert"])
def test_plmkit_lora_loads_in_peft(family: str, tmp_path) -> None:
    base = tiny(family).eval()
    plmkit.save_hf(base, tmp_path / "base")
    model = apply_peft(base, "lora", LoRAConfig(r=4, alpha=8, targets=TARGETS[family][0]))
    with torch.no_grad():
        for p in adapter_parameters(model):
            p.normal_(0, 0.2)
    export_peft_lora(model, tmp_path / "adapter")
    hf = getattr(transformers, HF_CLASSES[family]).from_pretrained(tmp_path / "base").eval()
    hf = peft.PeftModel.from_pretrained(hf, tmp_path / "adapter").eval()
    ids, mask = batch()
    with torch.no_grad():
        want = model(input_ids=ids, attention_mask=mask)
        got = hf_out(hf, ids, mask)
        torch.testing.assert_close(got, want, rtol=0, atol=1e-4)
        with hf.disable_adapter():  # the adapter changed the outputs: the test can fail
            assert not torch.allclose(hf_out(hf, ids, mask), want, atol=1e-3)


@pytest.mark.parametrize("family", ["gpt2", "llama", "bert"])
def test_peft_lora_imports_into_plmkit(family: str, tmp_path) -> None:
    plmkit.save_hf(tiny(family), tmp_path / "base")
    hf = getattr(transformers, HF_CLASSES[family]).from_pretrained(tmp_path / "base").eval()
    lcfg = peft.LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS[family][1],
                           fan_in_fan_out=family == "gpt2", use_rslora=family == "llama")
    hf = peft.get_peft_model(hf, lcfg)
    torch.manual_seed(5)
    with torch.no_grad():
        for n, p in hf.named_parameters():
            if "lora_" in n:
                p.normal_(0, 0.2)
    hf.save_pretrained(tmp_path / "adapter")
    model = import_peft_lora(plmkit.load(tmp_path / "base").model, tmp_path / "adapter")
    ids, mask = batch()
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids, attention_mask=mask), hf_out(hf.eval(), ids, mask),
                                   rtol=0, atol=1e-4)
