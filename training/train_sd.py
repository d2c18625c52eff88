"""Train the caption-image Stable Diffusion pipeline (``leanvision.testing.trained.sd``):
first the VAE, then the UNet and the text encoder together.

    python training/train_sd.py --stage vae --threads 1     # the VAE
    python training/train_sd.py --stage unet --threads 1    # then UNet + text encoder

(the shipped weights were made this way, with the defaults, taking ~5 + ~45 min on one thread
of a busy 2-core machine; ``--stage all`` runs both in one process, which draws the UNet's
initial weights from a different point of the RNG stream).

The VAE learns reconstruction (MSE + a small KL term); its latents' scale is then folded into
``quant_conv`` / ``post_quant_conv`` so that encoded latents have unit standard deviation and
``scaling_factor`` stays 1. The UNet learns epsilon prediction on the SD 1.x noise schedule
with min-SNR-5 loss weights, 10% of captions dropped to "" (classifier-free guidance), and an
EMA of its (and the text encoder's) weights, which is what is saved.

Writes ``sd_vae`` / ``sd_unet`` / ``sd_text_encoder`` under
``leanvision/testing/trained/weights/`` and ``training/logs/sd-{vae,unet}-loss.{json,png}``,
then prints the teacher's judge accuracy at 50 DDIM steps on test captions.
"""

from __future__ import annotations

import argparse
import math

import common
import diffusers as df
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from leanvision.diffusion.metrics import psnr
from leanvision.testing.diffusion_parts import SD_SCHEDULE
from leanvision.testing.trained import sd
from leanvision.testing.trained.weights import load_weights, save_weights, weights_path


def train_vae(args: argparse.Namespace, data: dict, val: dict) -> df.AutoencoderKL:
    vae = sd.make_vae().train()
    optimizer = torch.optim.AdamW(vae.parameters(), lr=args.vae_lr, weight_decay=0.0)
    generator = torch.Generator().manual_seed(args.seed)
    order = common.batches(len(data["captions"]), args.vae_batch_size, generator)
    history = common.new_history()
    val_pixels = val["images"][:128] * 2 - 1

    def evaluate(step: int) -> None:
        with torch.no_grad():
            recon = vae.decode(vae.encode(val_pixels).latent_dist.mode()).sample
        history["eval_step"].append(step)
        history["eval_loss"].append(F.mse_loss(recon, val_pixels).item())

    evaluate(0)
    bar = tqdm(range(args.vae_steps), desc="VAE", disable=args.no_progress)
    for step in bar:
        lr = common.schedule(optimizer, step, args.vae_steps, args.vae_lr, warmup=50)
        pixels = data["images"][next(order)] * 2 - 1
        posterior = vae.encode(pixels).latent_dist
        recon = vae.decode(posterior.sample(generator)).sample
        loss = F.mse_loss(recon, pixels) + args.kl_weight * posterior.kl().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        optimizer.step()
        history["step"].append(step + 1)
        history["loss"].append(loss.item())
        history["lr"].append(lr)
        if (step + 1) % args.eval_every == 0 or step + 1 == args.vae_steps:
            evaluate(step + 1)
            bar.set_postfix(loss=f"{loss.item():.4f}", val_mse=f"{history['eval_loss'][-1]:.4f}")
    vae.eval()
    scale = fold_latent_scale(vae, data["images"][:1000])
    with torch.no_grad():
        recon = vae.decode(vae.encode(val_pixels).latent_dist.mode()).sample
    quality = psnr((val_pixels + 1) / 2, ((recon + 1) / 2).clamp(0, 1))
    print(f"VAE: validation PSNR {quality:.2f} dB; latent scale folded: x{scale:.4f}")
    common.save_logs(
        "sd-vae",
        history,
        "SD VAE: reconstruction MSE + KL",
        {"args": vars(args), "val_psnr": quality, "folded_scale": scale},
        ylabel="MSE + kl_weight * KL (eval: MSE)",
    )
    save_weights(vae, sd.WEIGHT_NAMES["vae"])
    return vae


@torch.no_grad()
def fold_latent_scale(vae: df.AutoencoderKL, images: torch.Tensor) -> float:
    """Rescale the latent space so posterior means have unit std; the decoder is unchanged
    in function (``post_quant_conv`` absorbs the inverse). Returns the factor."""
    means = torch.cat([vae.encode(images[i : i + 250] * 2 - 1).latent_dist.mean for i in
                       range(0, len(images), 250)])  # fmt: skip
    scale = 1.0 / means.std().item()
    channels = vae.config.latent_channels
    vae.quant_conv.weight[:channels] *= scale
    vae.quant_conv.bias[:channels] *= scale
    vae.quant_conv.bias[channels:] += 2 * math.log(scale)  # log-variance of the scaled latent
    vae.post_quant_conv.weight /= scale
    return scale


@torch.no_grad()
def encode(vae: df.AutoencoderKL, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior means and standard deviations of ``images`` (N, 3, 32, 32) in [0, 1]."""
    means, stds = [], []
    for start in range(0, len(images), 250):
        posterior = vae.encode(images[start : start + 250] * 2 - 1).latent_dist
        means.append(posterior.mean)
        stds.append(posterior.std)
    return torch.cat(means), torch.cat(stds)


def train_unet(args: argparse.Namespace, vae: df.AutoencoderKL, data: dict, val: dict) -> None:
    tokenizer = sd.caption_tokenizer()
    text_encoder = sd.make_text_encoder(tokenizer).train()
    unet = sd.make_unet().train()
    noise_scheduler = df.DDPMScheduler.from_config(SD_SCHEDULE)
    bar_alpha = noise_scheduler.alphas_cumprod
    snr = bar_alpha / (1 - bar_alpha)
    loss_weight = snr.clamp(max=args.snr_gamma) / snr  # min-SNR-gamma, epsilon prediction

    def tokens(captions: list[str]) -> torch.Tensor:
        return tokenizer(captions, padding="max_length", max_length=sd.MAX_TOKENS,
                         truncation=True, return_tensors="pt").input_ids  # fmt: skip

    means, stds = encode(vae, data["images"])
    ids, empty = tokens(data["captions"]), tokens([""])[0]
    val_means, _ = encode(vae, val["images"][:128])
    eval_generator = torch.Generator().manual_seed(args.seed + 1)
    val_batch = {
        "latents": val_means,
        "ids": tokens(val["captions"][:128]),
        "noise": torch.randn(val_means.shape, generator=eval_generator),
        "t": torch.randint(0, 1000, (128,), generator=eval_generator),
    }
    parameters = list(unet.parameters()) + list(text_encoder.parameters())
    optimizer = torch.optim.AdamW(parameters, lr=args.unet_lr, weight_decay=1e-2)
    ema_unet = common.EMA(unet, args.ema_decay)
    ema_text = common.EMA(text_encoder, args.ema_decay)
    generator = torch.Generator().manual_seed(args.seed)
    order = common.batches(len(ids), args.batch_size, generator)
    history = common.new_history()

    def loss_of(latents, token_ids, noise, t, weighted=True):
        noisy = noise_scheduler.add_noise(latents, noise, t)
        hidden = text_encoder(token_ids)[0]
        prediction = unet(noisy, t, encoder_hidden_states=hidden).sample
        per_sample = (prediction - noise).pow(2).mean(dim=(1, 2, 3))
        return (per_sample * loss_weight[t]).mean() if weighted else per_sample.mean()

    def evaluate(step: int) -> None:
        unet.eval(), text_encoder.eval()
        with torch.no_grad():
            loss = loss_of(val_batch["latents"], val_batch["ids"], val_batch["noise"],
                           val_batch["t"], weighted=False)  # fmt: skip
        unet.train(), text_encoder.train()
        history["eval_step"].append(step)
        history["eval_loss"].append(loss.item())

    evaluate(0)
    bar = tqdm(range(args.unet_steps), desc="UNet + text encoder", disable=args.no_progress)
    for step in bar:
        lr = common.schedule(optimizer, step, args.unet_steps, args.unet_lr, warmup=200)
        index = next(order)
        latents = means[index] + stds[index] * torch.randn(means[index].shape, generator=generator)
        token_ids = ids[index].clone()
        drop = torch.rand(len(index), generator=generator) < args.drop_caption
        token_ids[drop] = empty
        noise = torch.randn(latents.shape, generator=generator)
        t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (len(index),),
                          generator=generator)  # fmt: skip
        loss = loss_of(latents, token_ids, noise, t)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        ema_unet.update(unet, step)
        ema_text.update(text_encoder, step)
        history["step"].append(step + 1)
        history["loss"].append(loss.item())
        history["lr"].append(lr)
        if (step + 1) % args.eval_every == 0 or step + 1 == args.unet_steps:
            evaluate(step + 1)
            bar.set_postfix(loss=f"{loss.item():.4f}", val=f"{history['eval_loss'][-1]:.4f}")
        if args.save_every and (step + 1) % args.save_every == 0:
            save_snapshot(ema_unet, ema_text, tokenizer)
    ema_unet.copy_to(unet)
    ema_text.copy_to(text_encoder)
    save_weights(unet.eval(), sd.WEIGHT_NAMES["unet"])
    save_weights(text_encoder.eval(), sd.WEIGHT_NAMES["text_encoder"])
    common.save_logs(
        "sd-unet",
        history,
        "SD UNet + text encoder: epsilon MSE (min-SNR-5 weighted)",
        {"args": vars(args)},
        ylabel="weighted epsilon MSE (eval: unweighted, fixed batch)",
    )


def save_snapshot(ema_unet: common.EMA, ema_text: common.EMA, tokenizer) -> None:
    """Save the EMA weights so far (to try the pipeline while training goes on)."""
    unet, text_encoder = sd.make_unet(), sd.make_text_encoder(tokenizer)
    ema_unet.copy_to(unet)
    ema_text.copy_to(text_encoder)
    save_weights(unet, sd.WEIGHT_NAMES["unet"])
    save_weights(text_encoder, sd.WEIGHT_NAMES["text_encoder"])


def report_teacher(count: int, guidance_scales: list[float]) -> dict[str, float]:
    """The saved teacher's judge accuracy at 50 DDIM steps on ``count`` test captions."""
    if not weights_path("judge").exists():
        print("no judge weights yet: run training/train_judge.py to score the teacher")
        return {}
    from leanvision.testing.trained.judge import scene_judge

    judge, scores = scene_judge(), {}
    for guidance in guidance_scales:
        tiny = sd.trained_sd_pipeline(num_prompts=count, guidance_scale=guidance)
        with torch.no_grad():
            images = tiny.model(**tiny.inputs).images
        scores[f"cfg {guidance:g}"] = judge.attribute_accuracy(images, tiny.inputs["prompt"])
        print(f"teacher, 50 DDIM steps, guidance {guidance:g}: {scores[f'cfg {guidance:g}']}")
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stage", choices=("all", "vae", "unet"), default="all")
    parser.add_argument("--train-size", type=int, default=10000)
    parser.add_argument("--vae-steps", type=int, default=600)
    parser.add_argument("--vae-batch-size", type=int, default=32)
    parser.add_argument("--vae-lr", type=float, default=1e-3)
    parser.add_argument("--kl-weight", type=float, default=1e-7)
    parser.add_argument("--unet-steps", type=int, default=1500)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--unet-lr", type=float, default=5e-4)
    parser.add_argument("--ema-decay", type=float, default=0.999)
    parser.add_argument("--snr-gamma", type=float, default=5.0)
    parser.add_argument("--drop-caption", type=float, default=0.1)
    parser.add_argument("--eval-every", type=int, default=100)
    parser.add_argument("--save-every", type=int, default=0, help="EMA snapshots (0: at end)")
    parser.add_argument("--report-prompts", type=int, default=64)
    args = common.common_arguments(parser).parse_args()
    start = common.setup(args)

    data = common.caption_data("train", args.train_size)
    val = common.caption_data("val", 256)
    if args.stage in ("all", "vae"):
        vae = train_vae(args, data, val)
        print(f"VAE done after {common.elapsed(start)}")
    else:
        vae = load_weights(sd.make_vae(), sd.WEIGHT_NAMES["vae"])
    if args.stage in ("all", "unet"):
        train_unet(args, vae, data, val)
        print(f"UNet + text encoder done after {common.elapsed(start)}")
        report_teacher(args.report_prompts, [2.0, sd.GUIDANCE_SCALE, 7.5])
    print(f"wall time {common.elapsed(start)} with {args.threads} thread(s)")


if __name__ == "__main__":
    main()
