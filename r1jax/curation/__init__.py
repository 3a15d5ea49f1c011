"""Data curation from model outputs: readability filters, rejection-sampling selection and the
cold-start set builder (DeepSeek-R1, sections 2.3.1 and 2.3.3).

These sit above rewards and models (they verify and filter samples, and the cold-start builder
can extend a model's vocabulary) and below the stages: `filters` (readability rules),
`rejection` (the selection rule, mixing, acceptance summaries), `cold_start` (the stage-1 set).
"""
