"""The latent tasks' results as the few lines of text a person reads (`--json` prints the dicts)."""

from __future__ import annotations


def _share(value) -> str:
    """A fraction as a percentage, or n/a when there was nothing to measure it on."""
    return "n/a" if value is None or value != value else f"{value:.1%}"


def _picture(result: dict) -> list[str]:
    return [f"picture: {result['picture']}"] if result.get("picture") else []


def format_store(summary: dict) -> str:
    verb = "encoded" if summary["encoded"] else "reused"
    return (
        f"{verb} {summary['path']}: {summary['n_images']} images of {summary['n_breeds']} breeds "
        f"({summary['n_val']} in the validation split), {summary['latent_dim']} latent dims"
    )


def format_reconstruction(result: dict) -> str:
    lines = [f"{r['psnr']:6.2f} dB  {r['image']}" for r in result["images"]]
    lines.append(f"{result['mean_psnr']:6.2f} dB  mean")
    return "\n".join(lines + _picture(result))


def format_mix(result: dict) -> str:
    ends = " -> ".join(result["ends"])
    return f"{result['mode']} ({result['method']}, {result['n_images']} images): {ends}\n" + (
        "\n".join(_picture(result))
    )


def _novelty_line(novelty: dict) -> str:
    return (
        f"novelty {novelty['score']:.2f} (flagged above {novelty['threshold']:.2f}); against the "
        f"oddest 1% of validation dogs: latent distance x{novelty['latent_distance_ratio']:.2f}, "
        f"reconstruction error x{novelty['reconstruction_error_ratio']:.2f}, "
        f"KL rate x{novelty['kl_rate_ratio']:.2f}"
    )


def format_identify(result: dict) -> str:
    novelty = result["novelty"]
    if novelty["unlike_training_dogs"]:
        head = f"{result['image']}: unlike any training dog; no breed named"
        ranked = "  nearest breeds, for what it is worth:"
    else:
        head = f"{result['image']}: {result['breed']}"
        ranked = "  top breeds:"
    lines = [head, "  " + _novelty_line(novelty), ranked]
    if result.get("source") == "classifier":
        lines[-1] += " (the model's classifier)"
    lines += [f"    {t['probability']:7.2%}  {t['breed']}" for t in result["top"]]
    if "probe_top" in result:
        lines.append("  the latent probe says: " + ", ".join(
            f"{t['breed']} {t['probability']:.0%}" for t in result["probe_top"][:3]
        ))  # fmt: skip
    lines.append("  " + _accuracy_line(result["source"], result["accuracy"]))
    if result.get("note"):
        lines.append(f"  note: {result['note']}")
    return "\n".join(lines + _picture(result))


def _accuracy_line(source: str, accuracy: dict) -> str:
    name = "the model's classifier" if source == "classifier" else "the latent probe"
    loss = accuracy.get("log_loss")
    return (
        f"{name} on {accuracy['n_val']} validation dogs: top-1 {_share(accuracy['top1'])}, "
        f"top-5 {_share(accuracy['top5'])}, log loss {'n/a' if loss is None else f'{loss:.2f}'} "
        f"(chance {accuracy['chance_top1']:.1%} / {accuracy['chance_top5']:.1%})"
    )


def format_identify_folder(result: dict) -> str:
    lines = [f"wrote {result['csv']}: {result['n_photos']} photos, a probability per breed"]
    if result["n_skipped"]:
        names = ", ".join(list(result["skipped"])[:5])
        lines.append(f"  {result['n_skipped']} unreadable, given uniform probabilities: {names}")
    lines.append("  " + _accuracy_line(result["source"], result["accuracy"]))
    return "\n".join(lines)


def format_identify_evaluation(report: dict) -> str:
    lines = [
        f"validation split: {report['n_val']} images, {report['n_train']} to train the probes",
        f"{'probe':10} {'top-1':>7} {'top-5':>7}",
    ]
    for kind in ("knn", "logistic"):
        lines.append(
            f"{kind:10} {_share(report[kind]['top1']):>7} {_share(report[kind]['top5']):>7}"
        )
    lines.append(f"{'chance':10} {report['chance_top1']:7.1%} {report['chance_top5']:7.1%}")
    lines.append(
        f"chosen: {report['chosen']}, temperature {report['temperature']:.2f} "
        f"(expected calibration error {_share(report['ece_before'])} -> "
        f"{_share(report['ece_after'])})"
    )
    lines.append("answers come from " + _accuracy_line(report["source"], report["answering"]))
    lines.append(f"validation dogs flagged as unlike: {_share(report['val_flagged_as_unlike'])}")
    return "\n".join(lines)


def format_ancestry(result: dict) -> str:
    novelty = result["novelty"]
    verdict = (
        " (unlike any training dog: shares are a guess)" if novelty["unlike_training_dogs"] else ""
    )
    how = {
        "decoder": "the breed mixture under which the model finds the photo likeliest",
        "classifier": "a mixture of breeds in the classifier's probabilities",
        "codes": "a mixture of breed centroids in latent space",
    }[result["space"]]
    lines = [f"{result['image']}{verdict} ({how})"]
    lines += [f"  {p['share']:6.1%}  {p['breed']}" for p in result["parents"]]
    lines.append("  ranked: " + ", ".join(result["ranking"]))
    if result.get("gain") is not None:
        lines.append(f"  explains the photo {result['gain']:.1f} nats better than one breed alone")
    lines.append("  " + _novelty_line(novelty))
    return "\n".join(lines + _picture(result))


def format_ancestry_evaluation(report: dict) -> str:
    lines = [
        f"{report['n_mutts']} mutts, {report['n_breeds']} breeds; shipped method: {report['method']}",
        f"{'method':18} {'top-2':>7} {'top-3':>7} {'share err':>10} {'parents':>8}",
    ]
    for name in ("ancestry", "latent", "nearest_centroid"):
        if name not in report:
            continue
        r = report[name]
        parents = f"{r['mean_parents']:8.2f}" if "mean_parents" in r else f"{'':8}"
        lines.append(
            f"{name:18} {r['both_parents_top2']:7.1%} {r['both_parents_top3']:7.1%} "
            f"{r['share_error']:10.3f} {parents}"
        )
    lines.append(f"chance of both parents in the top 2: {report['chance_both_parents_top2']:.1%}")
    lines.append(
        f"held-out purebreds explained as their one breed: {_share(report['purebreds_as_one_breed'])}"
    )
    return "\n".join(lines)


def format_clusters(result: dict) -> str:
    lines = [f"{result['n_images']} images, k = {result['n_breeds']} breeds"]
    lines.append(f"{'method':18} {'NMI':>6} {'ARI':>6} {'purity':>7}")
    for name in ("kmeans", "gaussian_mixture"):
        r = result[name]
        lines.append(f"{name:18} {r['nmi']:6.3f} {r['ari']:6.3f} {r['purity']:7.1%}")
    return "\n".join(lines + _picture(result))


SAMPLER_NAMES = {
    "gmm": "a mixture fitted to the training codes",
    "prior": "the prior N(0, I)",
    "breed": "the breed's spread around its centroid",
}


def format_sample(result: dict) -> str:
    breed = "" if result["source"] in SAMPLER_NAMES else f"{result['source']}s, "
    return (
        f"{result['n']} dogs ({breed}codes from {SAMPLER_NAMES[result['sampler']]}; temperature "
        f"{result['temperature']}, seed {result['seed']})\n" + "\n".join(_picture(result))
    )
