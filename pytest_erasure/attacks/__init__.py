"""The machinery attacks share, apart from the scenarios that use them: textual inversion
(`textual_inversion`), DDIM inversion and its reconstruction check (`inversion`), the
Ring-A-Bell genetic prompt search (`ring_a_bell`) and the prompt variants fuzzing draws
(`prompts`). A new attack (fine-tuning recovery, white-box adversarial prompts, probes) lands
here as one module and as one scenario in `scenarios/`.
"""
