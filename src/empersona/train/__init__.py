"""Fine-tuning stage: a LoRA adapter per (base model, domain, seed).

``recipe.py`` holds the config (the 32B recipe of docs/protocol.md section 2 as defaults),
``sft.py`` the training entry point (TRL ``SFTTrainer`` + PEFT), ``data.py`` the domain loaded
as chat rows, ``base_model.py`` the base model as loaded (precision, attention, 4-bit),
``metadata.py`` the output folder and its ``empersona.json`` record, ``commands.py`` the
``empersona train`` command.
"""
