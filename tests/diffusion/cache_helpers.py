"""What the step-cache tests share: one pipeline run to final latents."""

from __future__ import annotations

import numpy as np
import torch

STEPS = 6


def run(tiny, **overrides) -> torch.Tensor:
    """The final latents of ``tiny``'s pipeline, ``STEPS`` steps unless ``overrides`` say."""
    inputs = {**tiny.info["make_inputs"](), "num_inference_steps": STEPS, "output_type": "latent"}
    inputs.update(overrides)
    return torch.as_tensor(np.asarray(tiny.model(**inputs).images))


# ---------------------------------------------------------------- the hand-written oracle
#
# ``ManualUNet`` runs an SD ``UNet2DConditionModel`` module by module (resnets, attentions,
# samplers, written out here, not through the UNet's or its blocks' forwards), and
# ``oracle_run`` is the DDIM denoising loop with classifier-free guidance and ControlNet,
# written out too. Step caches are expressed on top of them in the paper's terms: DeepCache
# keeps the hidden state entering the up path at the skip branch; inherit keeps named units.


def _unit_call(
    kind: str,
    module: torch.nn.Module,
    hidden: torch.Tensor,
    emb: torch.Tensor,
    context: torch.Tensor,
) -> torch.Tensor:
    """One unit's forward, called the way diffusers' blocks call it."""
    if kind == "resnet":
        return module(hidden, emb)
    if kind == "attention":
        return module(hidden, encoder_hidden_states=context, return_dict=False)[0]
    return module(hidden)  # down/upsampler


def _block_units(
    prefix: str, block: torch.nn.Module
) -> list[list[tuple[str, str, torch.nn.Module]]]:
    """Layers of one down/up block: ``[(name, kind, module), ...]`` per layer, in order."""
    attentions = getattr(block, "attentions", None) or [None] * len(block.resnets)
    layers = []
    for index, (resnet, attention) in enumerate(zip(block.resnets, attentions, strict=True)):
        layer = [(f"{prefix}.resnets.{index}", "resnet", resnet)]
        if attention is not None:
            layer.append((f"{prefix}.attentions.{index}", "attention", attention))
        layers.append(layer)
    for attribute in ("downsamplers", "upsamplers"):
        for index, sampler in enumerate(getattr(block, attribute, None) or []):
            layers.append([(f"{prefix}.{attribute}.{index}", "sampler", sampler)])
    return layers


class ManualUNet:
    """An SD UNet run by hand; ``units`` lists every unit name in execution order."""

    def __init__(self, unet: torch.nn.Module):
        self.unet = unet
        self.down = [
            layer
            for index, block in enumerate(unet.down_blocks)
            for layer in _block_units(f"down_blocks.{index}", block)
        ]
        mid = unet.mid_block
        self.mid = [("mid_block.resnets.0", "resnet", mid.resnets[0])]
        for index, (attention, resnet) in enumerate(
            zip(mid.attentions, mid.resnets[1:], strict=True)
        ):
            self.mid.append((f"mid_block.attentions.{index}", "attention", attention))
            self.mid.append((f"mid_block.resnets.{index + 1}", "resnet", resnet))
        self.up = [
            layer
            for index, block in enumerate(unet.up_blocks)
            for layer in _block_units(f"up_blocks.{index}", block)
        ]
        self.units = [name for layer in (*self.down, self.mid, *self.up) for name, _, _ in layer]

    def __call__(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor,
        context: torch.Tensor,
        residuals: tuple | None = None,
        shallow: int | None = None,
        entry: torch.Tensor | None = None,
        kept: dict[str, torch.Tensor] | None = None,
        reused: frozenset[str] = frozenset(),
    ) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        """Noise prediction and, per skip branch ``s``, the deep state DeepCache keeps: the
        hidden state entering the up layer that consumes skip sample ``s``; for the deepest
        branch (every down layer fresh) the mid block's output, to which the UNet adds the
        current step's ControlNet mid residual (as the library and the published
        ``DeepCacheSDHelper`` both do).

        ``shallow=b, entry=h``: a DeepCache cached step: only ``conv_in`` and the first ``b``
        down layers run, and the up path starts at the layer consuming skip sample ``b``
        with ``h``. ``kept``: every unit run stores its output there under its name; the
        units named in ``reused`` return ``kept[name]`` instead of running. ``residuals``:
        a ControlNet's ``(down, mid)`` residuals, added to the skip samples and mid output.
        """
        unet = self.unet
        emb = unet.time_embedding(unet.get_time_embed(sample=sample, timestep=timestep), None)

        def run(units, hidden):
            for name, kind, module in units:
                if name in reused:
                    hidden = kept[name]
                else:
                    hidden = _unit_call(kind, module, hidden, emb, context)
                    if kept is not None:
                        kept[name] = hidden
            return hidden

        hidden = unet.conv_in(sample)
        skips = [hidden]
        for layer in self.down if shallow is None else self.down[:shallow]:
            hidden = run(layer, hidden)
            skips.append(hidden)
        if residuals is not None:
            # A cached step has fewer skip samples: the deep residuals are not used.
            skips = [skip + res for skip, res in zip(skips, residuals[0], strict=False)]
        deepest = len(self.down)
        entries: dict[int, torch.Tensor] = {}
        if shallow is None:
            hidden = entries[deepest] = run(self.mid, hidden)
        elif shallow == deepest:
            hidden = entry
        if residuals is not None and (shallow is None or shallow == deepest):
            hidden = hidden + residuals[1]
        consumes = deepest  # the next up resnet consumes skip sample ``consumes``
        for layer in self.up:
            if layer[0][1] != "resnet":  # an upsampler
                if shallow is None or consumes < shallow:
                    hidden = run(layer, hidden)
                continue
            if shallow is not None and consumes > shallow:
                consumes -= 1
                continue
            if consumes == shallow and shallow < deepest:
                hidden = entry
            if consumes < deepest:
                entries[consumes] = hidden
            hidden = run(layer, torch.cat([hidden, skips.pop()], dim=1))
            consumes -= 1
        hidden = unet.conv_out(unet.conv_act(unet.conv_norm_out(hidden)))
        return hidden, entries


def initial_latents(tiny, seed: int = 0, batch: int = 1) -> torch.Tensor:
    """Fixed starting noise for ``tiny`` (passed to the pipeline as ``latents=``)."""
    size = tiny.info["height"] // 2
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 4, size, size, generator=generator)


def pipeline_run(tiny, latents: torch.Tensor, **overrides) -> tuple[torch.Tensor, list]:
    """``tiny``'s pipeline from ``latents``: final latents and the UNet's output per call."""
    outputs: list[torch.Tensor] = []
    hook = tiny.model.unet.register_forward_hook(lambda _m, _a, out: outputs.append(out[0]))
    try:
        final = run(tiny, latents=latents.clone(), **overrides)
    finally:
        hook.remove()
    return final, outputs


@torch.no_grad()
def oracle_run(tiny, latents: torch.Tensor, step, **overrides) -> tuple[torch.Tensor, list]:
    """The DDIM loop of ``tiny``'s (ControlNet) SD pipeline, written out, with
    ``step(index, sample, timestep, context, residuals)`` as the UNet call: final latents and
    ``step``'s output per step, to compare with :func:`pipeline_run`."""
    pipe = tiny.model
    inputs = {**tiny.info["make_inputs"](), "num_inference_steps": STEPS, **overrides}
    guidance = inputs["guidance_scale"]
    cfg = guidance > 1
    per_prompt = inputs.get("num_images_per_prompt", 1)
    positive, negative = pipe.encode_prompt(inputs["prompt"], "cpu", per_prompt, cfg)
    context = torch.cat([negative, positive]) if cfg else positive
    control = None
    if getattr(pipe, "controlnet", None) is not None:
        control = pipe.prepare_image(
            image=inputs["image"],
            width=inputs["width"],
            height=inputs["height"],
            batch_size=latents.shape[0],
            num_images_per_prompt=per_prompt,
            device="cpu",
            dtype=torch.float32,
            do_classifier_free_guidance=cfg,
        )
    scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config)
    scheduler.set_timesteps(inputs["num_inference_steps"])
    latents = latents.clone() * scheduler.init_noise_sigma
    outputs = []
    for index, timestep in enumerate(scheduler.timesteps):
        sample = torch.cat([latents] * 2) if cfg else latents
        sample = scheduler.scale_model_input(sample, timestep)
        residuals = None
        if control is not None:
            residuals = pipe.controlnet(
                sample,
                timestep,
                encoder_hidden_states=context,
                controlnet_cond=control,
                conditioning_scale=1.0,
                return_dict=False,
            )
        prediction = step(index, sample, timestep, context, residuals)
        outputs.append(prediction)
        if cfg:
            uncond, cond = prediction.chunk(2)
            prediction = uncond + guidance * (cond - uncond)
        latents = scheduler.step(prediction, timestep, latents, eta=0.0, return_dict=False)[0]
    return latents, outputs


def deepcache_oracle(manual: ManualUNet, branch: int, full_steps: list[bool]):
    """A ``step`` for :func:`oracle_run`: DeepCache as the paper states it. A full step runs
    everything and keeps the hidden state entering the up layer that consumes skip sample
    ``branch``; a cached step recomputes the shallow branch and resumes the up path there
    with the kept state."""
    kept: dict[str, torch.Tensor] = {}

    def step(index, sample, timestep, context, residuals):
        if full_steps[index]:
            output, entries = manual(sample, timestep, context, residuals)
            kept["entry"] = entries[branch]
            return output
        return manual(sample, timestep, context, residuals, shallow=branch, entry=kept["entry"])[0]

    return step


def inherit_oracle(manual: ManualUNet, units: frozenset[str], inheriting: list[bool]):
    """A ``step`` for :func:`oracle_run`: on inheriting steps the named units return their
    output from the last step that ran them."""
    assert units and units <= set(manual.units), sorted(units - set(manual.units))
    kept: dict[str, torch.Tensor] = {}

    def step(index, sample, timestep, context, residuals):
        reused = units if inheriting[index] else frozenset()
        return manual(sample, timestep, context, residuals, kept=kept, reused=reused)[0]

    return step
