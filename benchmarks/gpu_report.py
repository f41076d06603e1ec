"""The GPU suite's table: one line per part with the figures that answer the issues' targets."""

from __future__ import annotations

from typing import Any


def _fmt(value: Any, spec: str = ".3g") -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return format(value, spec)
    return str(value)


def headline(name: str, result: dict[str, Any]) -> str:
    """The figures of a part that answer the issue's targets, in one line."""
    if result.get("status") != "ok":
        return result.get("reason") or result.get("error", "")[:120]
    f = result.get("figures", {})
    if "_lora_" in name:
        return (
            f"epoch {_fmt(f.get('epoch_s'))} s (sampling {_fmt(f.get('sampling_s'))}, "
            f"training {_fmt(f.get('training_s'))}), {_fmt(f.get('images_per_s'))} img/s, "
            f"peak {_fmt(f.get('peak_memory_gib'))} GiB, "
            f"training MFU {_fmt(f.get('training_mfu'), '.1%')}"
        )
    if name.startswith(("sd15_nft_", "sd15_awm_")):
        algorithm = name.split("_")[1]
        return (
            f"epoch {_fmt(f.get('epoch_s'))} s (sampling {_fmt(f.get('sampling_s'))}, "
            f"training {_fmt(f.get('training_s'))}), peak {_fmt(f.get('peak_memory_gib'))} GiB, "
            f"keeps {_fmt(f.get(f'kept_bytes_per_sample_{algorithm}'))} B per sample "
            f"(PPO {_fmt(f.get('kept_bytes_per_sample_ppo'))})"
        )
    if name == "sd15_full_ft":
        return (
            f"peak {_fmt(f.get('peak_training_gib'))} GiB "
            f"(fits 24 GB: {_fmt(f.get('fits_24gb'))}), "
            f"{result.get('settings', {}).get('optimizer', '')[:40]}"
        )
    if "_ratio_" in name:
        return (
            f"max|log ratio| sampled vs train shape "
            f"{_fmt(f.get('max_abs_log_ratio_sampled_vs_train_shape'), '.1e')}; "
            f"update never {_fmt(f.get('log_ratio_abs_max_never'), '.1e')}, "
            f"auto {_fmt(f.get('log_ratio_abs_max_auto'), '.1e')} "
            f"(target <= {_fmt(result.get('settings', {}).get('target_abs_log_ratio'), '.0e')})"
        )
    if name.startswith("trl_"):
        return (
            f"epoch {_fmt(f.get('epoch_s'))} s (sampling {_fmt(f.get('sampling_s'))}, "
            f"training {_fmt(f.get('training_s'))}), peak {_fmt(f.get('peak_memory_gib'))} GiB"
        )
    if name in ("aesthetic", "pickscore", "clip_score"):
        return (
            f"{_fmt(f.get('images_per_s'), '.0f')} img/s end to end, model "
            f"{_fmt(f.get('model_images_per_s'), '.0f')} (bf16 "
            f"{_fmt(f.get('model_images_per_s_bf16'), '.0f')}), preprocess "
            f"{_fmt(f.get('preprocess_images_per_s'), '.0f')}"
        )
    return ""


def print_table(doc: dict[str, Any]) -> None:
    device = doc.get("device") or {}
    print(
        f"\nGPU suite on {device.get('name', '?')} (torch {device.get('torch', '?')}, "
        f"CUDA {device.get('cuda')}); peak assumed: {device.get('peak_bf16_flops_source', '?')}"
    )
    print(f"{'part':<20} {'status':<8} {'wall s':>7}  figures")
    for name, result in doc["parts"].items():
        wall = result.get("wall_s")
        print(
            f"{name:<20} {result.get('status', '?'):<8} {_fmt(wall, '7.1f'):>7}  "
            f"{headline(name, result)}"
        )
