"""White-box adversarial prompts: UnlearnDiffAtk and P4D, discrete prompt tokens optimised
through the attacked model's own gradients.

Both attacks start from an image the *standard* model draws for a prompt and seed (the concept
image the erasure should prevent) and look for discrete tokens that make the attacked model
denoise towards it; the tokens are then typed as text (the found prompt is a string anyone can
paste), so they are judged, exported and replayed like any other prompt.

**UnlearnDiffAtk** (Zhang et al., ECCV 2024; OPTML-Group/Diffusion-MU-Attack,
`src/attackers/text_grad_.py`, `src/tasks/classifier_.py`,
`configs/nudity/text_grad_esd_nudity_classifier.json`): the attacked model as a diffusion
classifier. k = 5 tokens are prepended to the prompt ("prefix_k"), each a probability vector
over the vocabulary on the simplex (initialised uniform); every step samples one token per slot
from those vectors (a straight-through estimate whose backward is hardtanh of the gradient),
encodes the prompt with them, and takes the epsilon-MSE of the attacked UNet at one timestep on
the concept image's latent (VAE posterior mean) with fresh noise; Adam (lr 0.01, weight decay
0.1) steps the vectors and each is projected back onto the simplex. The timesteps are 50, from
10 to 990 in steps of 20, visited in order, 40 steps each (2,000 gradient steps at most); after
each timestep's 40 steps the arg-max tokens are decoded and the prompt is judged by generating
one image from it with the prompt's seed, the attack stopping at the first success. The
original prompt is judged first. So one attack is a search of at most 51 generations.

**P4D** (Chin et al., ICML 2024; joycenerd/P4D, `prompt_optimization/optimize_n.py`,
`optimize_k.py`, `configs/esd_nudity_optmz_config.json`): match the attacked model's noise
prediction on the optimised prompt to the standard model's on the original prompt, at random
timesteps on the concept image's latent. The prompt's tokens are continuous embeddings
projected to their nearest vocabulary embedding (cosine) before every forward pass, the
gradient taken at the projection and applied to the continuous ones (PEZ); AdamW lr 0.1, weight
decay 0.1, batch 1, 3000 iterations, the projected prompt decoded and scored every 50.
P4D-N optimises 16 free tokens; P4D-K keeps the prompt's tokens and inserts a learnable one
before every 3 of them. Its headline (66.6% on ESD nudity) is the union of the two variants,
counted over the prompts the standard model draws the concept for (and the erased one does
not).

Independent of pytest: `optimise(pipe, reference_pipe, images, prompts, seeds, settings)`.

What is done differently, and why (the scenario records these in every report):
- the decoded candidates are returned, not judged here: the scenario judges every candidate
  through the audit's own cached generation and detector (`scenarios.searches`), so a search
  succeeds when any candidate's image is flagged. For UnlearnDiffAtk that is exactly the
  published early stop (the candidates before the first success do not depend on what comes
  after it), run to the end; P4D keeps the candidate whose image is most CLIP-similar to the
  concept image and judges that one, we judge them all (a stronger attacker: an audit errs on
  the side of finding the concept);
- tokens are drawn from, and projected onto, whole-word tokens only (`ordinary_ids`: no start,
  end or padding token, no byte fragment, no word-piece that glues onto the next): the found
  prompt is text, and those do not survive typing;
- P4D pads the optimised prompt with token 0; we pad as the tokenizer pads typed text, so the
  optimised encoding is the one the judged generation sees;
- P4D encodes a posterior *sample* of the concept image; we use the posterior mean for both
  attacks (UnlearnDiffAtk's choice);
- several searches may be optimised side by side (`batch`): each keeps its own parameters,
  optimiser state, noise, timesteps and token draws (its own generator), the loss is the sum
  of the searches' own losses, so a search's gradients are its own.

Through a defense (`surrogate`, the adaptive attacker, `attacks.textual_inversion.
DefenseSurrogate`, e.g. `defenses.irece.IreceSurrogate`): each step's sample goes through the
surrogate's `redraw` and `__call__` as in textual inversion: some samples are moved to the
defense's intervention timesteps, the defended input is the surrogate's, and the target is the
noise consistent with the concept image there (UnlearnDiffAtk), or the standard model's
prediction shifted by the same correction (P4D: its target plus the surrogate's noise minus the
drawn noise, equal to the plain target outside the defended region).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from pytest_erasure.errors import ErasureInputError

if TYPE_CHECKING:
    import torch
    from diffusers import StableDiffusionPipeline

METHODS = ("unlearndiffatk", "p4d-n", "p4d-k")


@dataclass(frozen=True)
class AttackSettings:
    """One attack's budget; defaults are the published SD v1.4 settings."""

    method: str = "unlearndiffatk"
    tokens: int = 5
    """UnlearnDiffAtk: prefix tokens k; P4D-N: free tokens (16); P4D-K: unused."""
    steps: int = 2000
    """Gradient steps in all (UnlearnDiffAtk: timesteps x iterations per timestep)."""
    eval_every: int = 40
    """Steps between decoded candidates (UnlearnDiffAtk: per timestep, after its steps; P4D:
    at steps 0, eval_every, ..., before the step's update, as `optimize_n.py` does)."""
    lr: float = 0.01
    weight_decay: float = 0.1
    every_k: int = 3
    """P4D-K: a learnable token before every `every_k` prompt tokens."""

    def validate(self, prefix: str, names: dict[str, str] | None = None) -> None:
        """Usage errors naming `--{prefix}-{field}`, or the option `names` maps a field to
        (UnlearnDiffAtk's steps and eval-every come from its timesteps and iterations)."""
        checks = (
            ("method", self.method, self.method in METHODS, f"give one of {', '.join(METHODS)}"),
            ("tokens", self.tokens, 1 <= self.tokens <= 75, "give a whole number in 1..75"),
            ("steps", self.steps, self.steps >= 1, "give a whole number of steps >= 1"),
            ("eval-every", self.eval_every, self.eval_every >= 1, "give a whole number >= 1"),
            ("lr", self.lr, self.lr > 0 and self.lr != float("inf"),
             "give a positive, finite learning rate"),
            ("weight-decay", self.weight_decay, self.weight_decay >= 0,
             "give a weight decay >= 0"),
            ("every-k", self.every_k, self.every_k >= 1, "give a whole number >= 1"),
        )
        for name, value, ok, fix in checks:
            if not ok:
                option = (names or {}).get(name, f"{prefix}-{name}")
                raise ErasureInputError(f"--{option}", f"is {value}", fix)

    def candidates(self) -> int:
        """Decoded candidates one search yields (the original prompt not counted)."""
        if self.method == "unlearndiffatk":
            return self.steps // self.eval_every
        return len(range(0, self.steps, self.eval_every))

    def describe(self) -> dict[str, Any]:
        return asdict(self)


def ordinary_ids(tokenizer: Any) -> list[int]:
    """Vocabulary ids a found prompt may use: Ring-A-Bell's candidates (no special token, no
    byte fragment), and of those the word-final ones (`...</w>`): a token that is not the end
    of a word glues onto the next when decoded, and the typed text tokenizes differently."""
    from pytest_erasure.attacks.ring_a_bell import candidate_ids

    ids = candidate_ids(tokenizer).tolist()
    tokens = tokenizer.convert_ids_to_tokens(ids)
    return [i for i, token in zip(ids, tokens, strict=True) if token.endswith("</w>")]


def timesteps_for(blocks: int, train_timesteps: int) -> list[int]:
    """UnlearnDiffAtk's timesteps: `blocks` evenly spaced from T / blocks / 2
    (classifier_.py: 10, 30, ..., 990 for 50 of 1000)."""
    start = train_timesteps // blocks // 2
    return list(range(start, train_timesteps, max(1, train_timesteps // blocks)))[:blocks]


@dataclass
class _Layout:
    """A batch of prompts' token ids with learnable slots: `ids` (B, L) with a stand-in where a
    slot is, `which` (B, L) the slot index there or -1, `slots` the slots per search."""

    ids: torch.Tensor
    which: torch.Tensor
    slots: list[int]


def _content(tokenizer: Any, prompt: str) -> list[int]:
    return list(tokenizer(prompt, add_special_tokens=False).input_ids)


def layout(tokenizer: Any, prompts: Sequence[str], method: str, tokens: int,
           every_k: int) -> _Layout:
    """Where each search's learnable tokens sit among its prompt's: UnlearnDiffAtk prefix_k
    ([bos] k slots prompt [eos]), P4D-N ([bos] `tokens` slots [eos]), P4D-K (a slot before
    every `every_k` prompt tokens, `optimize_k.py`'s len // k + 1 of them)."""
    import torch

    length = tokenizer.model_max_length
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    rows, marks, slots = [], [], []
    for prompt in prompts:
        content = _content(tokenizer, prompt)
        if method == "unlearndiffatk":
            seq = [-1] * tokens + content
        elif method == "p4d-n":
            seq = [-1] * tokens
        else:
            learn = len(content) // every_k + 1
            seq, it = [], iter(content)
            for i in range(len(content) + learn):
                seq.append(-1 if i % (every_k + 1) == 0 else next(it, None))
            seq = [s for s in seq if s is not None]
        seq = seq[:length - 2]
        ids = [bos] + seq + [eos] + [pad] * (length - len(seq) - 2)
        which, k = [], 0
        for token in ids:
            which.append(k if token == -1 else -1)
            k += token == -1
        rows.append([0 if t == -1 else t for t in ids])
        marks.append(which)
        slots.append(k)
    return _Layout(torch.tensor(rows), torch.tensor(marks), slots)


def _encode(text_encoder: Any, lay: _Layout, vectors: torch.Tensor) -> torch.Tensor:
    """(B, L, D) prompt embeddings with `vectors` (B, S, D) spliced in at the slots (a forward
    hook on the token embedding, removed on return: the encoder is left as it was)."""
    import torch

    device = text_encoder.device
    which = lay.which.to(device)
    batch = torch.arange(len(which), device=device)[:, None]

    def hook(module, inputs, output):  # noqa: ARG001 - forward-hook signature
        rows = vectors.to(device=output.device, dtype=output.dtype)[batch, which.clamp(min=0)]
        return torch.where((which >= 0)[..., None], rows, output)

    handle = text_encoder.get_input_embeddings().register_forward_hook(hook)
    try:
        return text_encoder(lay.ids.to(device))[0]
    finally:
        handle.remove()


def decode(tokenizer: Any, lay: _Layout, b: int, chosen: Sequence[int]) -> str:
    """Search b's prompt with token ids `chosen` in its slots, as text."""
    ids, which = lay.ids[b].tolist(), lay.which[b].tolist()
    out = []
    for token, slot in zip(ids, which, strict=True):
        if slot >= 0:
            out.append(int(chosen[slot]))
        elif token not in (tokenizer.bos_token_id, tokenizer.eos_token_id,
                           tokenizer.pad_token_id):
            out.append(token)
    return str(tokenizer.decode(out)).strip()


def project_simplex(v: torch.Tensor) -> torch.Tensor:
    """Euclidean projection of each row onto the probability simplex (what UnlearnDiffAtk's
    bisection computes to 1e-5; upper bound 1 holds on the simplex by itself)."""
    import torch

    u, _ = torch.sort(v, dim=-1, descending=True)
    cumulative = u.cumsum(-1) - 1
    index = torch.arange(1, v.shape[-1] + 1, device=v.device, dtype=v.dtype)
    rho = ((u - cumulative / index) > 0).sum(-1, keepdim=True).clamp(min=1)
    theta = cumulative.gather(-1, rho - 1) / rho.to(v.dtype)
    return (v - theta).clamp(min=0)


def _straight_through() -> Any:
    import torch
    from torch.nn import functional as F

    class Select(torch.autograd.Function):
        """Forward: the sampled one-hot; backward: hardtanh of its gradient to the
        probabilities (`STERandSelect`)."""

        @staticmethod
        def forward(ctx, probs, onehot):  # noqa: ARG004
            return onehot

        @staticmethod
        def backward(ctx, grad):  # noqa: ARG004
            return F.hardtanh(grad), None

    return Select


def encode_images(pipe: StableDiffusionPipeline, images: torch.Tensor) -> torch.Tensor:
    """VAE posterior means of images in [0, 1], scaled (float32)."""
    import torch

    vae = pipe.vae
    with torch.no_grad():
        x = images.to(vae.device, vae.dtype) * 2 - 1
        return (vae.encode(x).latent_dist.mean * vae.config.scaling_factor).float()


def _target_noise(scheduler: Any, latents: torch.Tensor, noise: torch.Tensor,
                  a: torch.Tensor) -> torch.Tensor:
    prediction = scheduler.config.prediction_type
    if prediction == "epsilon":
        return noise
    if prediction == "v_prediction":
        return a.sqrt() * noise - (1 - a).sqrt() * latents
    raise ValueError(f"unsupported prediction_type {prediction!r}")


def optimise(pipe: StableDiffusionPipeline, reference: StableDiffusionPipeline,
             images: torch.Tensor, prompts: Sequence[str], seeds: Sequence[int],
             settings: AttackSettings, *, progress: Callable[[int], None] | None = None,
             surrogate: Any = None) -> list[dict[str, Any]]:
    """One search per (image, prompt, seed), side by side: per search {"candidates": decoded
    prompts in the order the attack judges them, "losses": the loss after each candidate's
    steps}. `pipe` is the attacked model, `reference` the standard one (P4D's target; unused by
    UnlearnDiffAtk). Deterministic for given seeds on a given device."""
    import torch

    if not (len(images) == len(prompts) == len(seeds)) or not len(prompts):
        raise ValueError("one image, prompt and seed per search")
    tokenizer, encoder, unet, scheduler = pipe.tokenizer, pipe.text_encoder, pipe.unet, \
        pipe.scheduler
    device, dtype = unet.device, unet.dtype
    allowed = torch.tensor(ordinary_ids(tokenizer))
    table = encoder.get_input_embeddings().weight.detach().float()[allowed.to(
        encoder.device)].to(device)
    lay = layout(tokenizer, prompts, settings.method, settings.tokens, settings.every_k)
    batch, width = len(prompts), max(lay.slots)
    latents = encode_images(reference, images).to(device)
    generators = [torch.Generator().manual_seed(int(s)) for s in seeds]
    alphas = scheduler.alphas_cumprod.to(device)
    train_t = scheduler.config.num_train_timesteps
    if surrogate is not None:
        surrogate.reset()
    runs: list[dict[str, Any]] = [{"candidates": [], "losses": []} for _ in prompts]

    def draw(t: list[int]) -> dict[str, torch.Tensor]:
        noise = torch.stack([torch.randn(latents.shape[1:], generator=g) for g in generators])
        return {"latents": latents.cpu(), "noise": noise, "t": torch.tensor(t)}

    def sample(batch_draw: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor,
                                                             torch.Tensor, torch.Tensor,
                                                             torch.Tensor]:
        """(the attacked model's input, the timesteps, the plain target noise, the defense's
        correction to it, the undefended input)."""
        if surrogate is not None:
            batch_draw = surrogate.redraw(batch_draw)
        noise, t = batch_draw["noise"].to(device), batch_draw["t"].to(device)
        a = alphas[t].view(-1, 1, 1, 1).float()
        plain = (a.sqrt() * latents + (1 - a).sqrt() * noise).to(dtype)
        noisy, shift = plain, torch.zeros_like(noise)
        if surrogate is not None:
            noisy, defended = surrogate(plain, latents, noise, t, batch_draw)
            shift = defended.float() - noise
        return noisy, t, _target_noise(scheduler, latents, noise, a), shift, plain

    def loss_of(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        per = ((pred.float() - target.float()) ** 2).flatten(1).mean(1)
        return per.sum(), per.detach().cpu()

    with torch.enable_grad():
        if settings.method == "unlearndiffatk":
            select = _straight_through()
            probs = project_simplex(torch.full((batch, width, len(allowed)), 1.0 / len(allowed),
                                               device=device))
            probs.requires_grad_(True)
            optimizer = torch.optim.Adam([probs], lr=settings.lr,
                                         weight_decay=settings.weight_decay)
            blocks = settings.steps // settings.eval_every
            for t_block in timesteps_for(blocks, train_t):
                for _ in range(settings.eval_every):
                    picks = torch.stack([torch.multinomial(
                        probs[b].detach().cpu().float(), 1, generator=g)[:, 0]
                        for b, g in enumerate(generators)]).to(device)
                    onehot = torch.nn.functional.one_hot(picks, len(allowed)).float()
                    vectors = select.apply(probs, onehot) @ table
                    cond = _encode(encoder, lay, vectors)
                    noisy, t, target, shift, _plain = sample(draw([t_block] * batch))
                    pred = unet(noisy, t, encoder_hidden_states=cond.to(dtype)).sample
                    loss, per = loss_of(pred, target + shift)
                    (grad,) = torch.autograd.grad(loss, [probs])
                    optimizer.zero_grad(set_to_none=True)
                    probs.grad = grad
                    optimizer.step()
                    with torch.no_grad():
                        probs.data = project_simplex(probs.data)
                    if progress is not None:
                        progress(1)
                chosen = allowed[probs.detach().argmax(-1).cpu()]
                for b in range(batch):
                    runs[b]["candidates"].append(decode(tokenizer, lay, b, chosen[b].tolist()))
                    runs[b]["losses"].append(round(float(per[b]), 6))
        else:
            ref_cond = reference.text_encoder(reference.tokenizer(
                list(prompts), padding="max_length", truncation=True,
                max_length=reference.tokenizer.model_max_length,
                return_tensors="pt").input_ids.to(reference.text_encoder.device))[0].detach()
            start = torch.stack([torch.randint(len(allowed), (width,), generator=g)
                                 for g in generators])
            continuous = table[start.to(device)].clone().requires_grad_(True)
            optimizer = torch.optim.AdamW([continuous], lr=settings.lr,
                                          weight_decay=settings.weight_decay)
            unit = torch.nn.functional.normalize(table, dim=-1)
            last = None
            for step in range(settings.steps):
                with torch.no_grad():
                    nearest = (torch.nn.functional.normalize(continuous, dim=-1)
                               @ unit.T).argmax(-1)
                projected = table[nearest].clone().requires_grad_(True)
                cond = _encode(encoder, lay, projected)
                t_draw = [int(torch.randint(train_t, (1,), generator=g)) for g in generators]
                noisy, t, _noise, shift, plain = sample(draw(t_draw))
                with torch.no_grad():  # the standard model, undefended, on the original prompt
                    target = reference.unet(plain.to(reference.unet.dtype), t.to(
                        reference.unet.device), encoder_hidden_states=ref_cond.to(
                        reference.unet.dtype)).sample.to(device).float()
                pred = unet(noisy, t, encoder_hidden_states=cond.to(dtype)).sample
                loss, per = loss_of(pred, target + shift)
                (grad,) = torch.autograd.grad(loss, [projected])
                if step % settings.eval_every == 0:
                    chosen = allowed[nearest.cpu()]
                    for b in range(batch):
                        runs[b]["candidates"].append(decode(tokenizer, lay, b,
                                                            chosen[b].tolist()))
                        runs[b]["losses"].append(round(float(per[b]), 6) if last is None
                                                 else last[b])
                optimizer.zero_grad(set_to_none=True)
                continuous.grad = grad
                optimizer.step()
                last = [round(float(x), 6) for x in per]
                if progress is not None:
                    progress(1)
    return runs


def random_prompts(tokenizer: Any, prompts: Sequence[str], seeds: Sequence[int],
                   settings: AttackSettings, draws: int) -> list[list[str]]:
    """The random-prefix control: per search, `draws` prompts with the attack's learnable
    slots filled by its own random start and no optimisation. UnlearnDiffAtk starts every
    slot's distribution uniform on the simplex (`text_grad_.py` `init_adv`) and samples a
    token from it (`STERandSelect`): a uniform draw of whole-word tokens per slot. P4D starts
    from uniformly drawn token ids (`optimize_n.py`), `optimise`'s `torch.randint`. Each
    search's draws come from a generator seeded with its seed, as `optimise`'s do: independent
    random starts of the same search, reproducible from the seed alone."""
    import torch

    allowed = torch.tensor(ordinary_ids(tokenizer))
    lay = layout(tokenizer, prompts, settings.method, settings.tokens, settings.every_k)
    out: list[list[str]] = []
    for b, seed in enumerate(seeds):
        generator = torch.Generator().manual_seed(int(seed))
        width, texts = lay.slots[b], []
        uniform = torch.full((width, len(allowed)), 1.0 / len(allowed))
        for _ in range(draws):
            if settings.method == "unlearndiffatk":
                picks = torch.multinomial(uniform, 1, generator=generator)[:, 0]
            else:
                picks = torch.randint(len(allowed), (width,), generator=generator)
            texts.append(decode(tokenizer, lay, b, allowed[picks].tolist()))
        out.append(texts)
    return out


def first_step(settings: AttackSettings, candidate: int) -> int:
    """The gradient steps taken before candidate `candidate` (0-based) was decoded:
    UnlearnDiffAtk judges after each timestep's `eval_every` steps, P4D decodes at steps 0,
    eval_every, ... before that step's update (its candidate 0 is its random start)."""
    if settings.method == "unlearndiffatk":
        return (candidate + 1) * settings.eval_every
    return candidate * settings.eval_every


def unit_random_prompts(host: Any, advance: Callable[[int], None], *, role: str,
                        prompts: list[str], seeds: list[int], settings: AttackSettings,
                        draws: int) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The random-prefix control's prompts as a unit (`executors.units`): `role`'s tokenizer."""
    out = random_prompts(host.pipeline(role).tokenizer, prompts, seeds, settings, draws)
    advance(len(prompts))
    return {}, {"prompts": out}


def unit_search(host: Any, advance: Callable[[int], None], *, role: str, images: torch.Tensor,
                prompts: list[str], seeds: list[int], settings: AttackSettings,
                defense: str | None = None, concept: Any = None, config: Any = None
                ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The searches as a unit (`executors.units`): on `role`'s model, through `defense`'s
    surrogate when one is named (the adaptive attacker)."""
    surrogate = None
    if defense is not None:
        if concept is None or config is None:
            raise ValueError("an adaptive search needs the concept and the config")
        surrogate = host.defense_surrogate(defense, concept, config, role, int(seeds[0]))
    runs = optimise(host.pipeline(role), host.pipeline("standard"), images, prompts, seeds,
                    settings, progress=advance, surrogate=surrogate)
    facts: dict[str, Any] = {"runs": runs}
    if surrogate is not None and hasattr(surrogate, "describe"):
        facts["surrogate"] = surrogate.describe()
    return {}, facts
