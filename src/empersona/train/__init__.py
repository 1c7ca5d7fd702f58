"""Fine-tuning stage: a LoRA adapter per (base model, domain, seed).

``recipe.py`` holds the config (the 32B recipe of PROTOCOLS.md section 2 as defaults),
``sft.py`` the training entry point (TRL ``SFTTrainer`` + PEFT), ``commands.py`` the
``empersona train`` command.
"""
