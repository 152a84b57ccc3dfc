"""Column names of every Parquet table raysynth writes, named once (DESIGN §1)."""

SAMPLE_ID = "sample_id"
LABEL = "label"
CLASS_NAME = "class_name"
IMAGE = "image"  # PNG bytes, never decoded arrays
SPLIT = "split"
SOURCE = "source"  # where a real image came from (file path or dataset index)
GROUP = "group"  # a real image's group (context, NICO++), "" when the data has none
PATH = "path"  # an input Parquet row's file path, matched against published split lists

# Synthetic rows (provenance)
PROMPT = "prompt"
NEGATIVE_PROMPT = "negative_prompt"
SEED = "seed"
ROUND = "round"
COND_ID = "cond_id"  # real sample_id used for conditioning and for the filter
GENERATOR = "generator"  # JSON: model id/path, scheduler + config, guidance, LoRA
REAL_COS = "real_cos"
TEXT_COS = "text_cos"
CRITERION = "criterion"
ACCEPTED = "accepted"
INDEX = "index"  # the row's position within its class and round (plan)
FLAGGED = "flagged"  # the safety checker flagged (and dropped) the image
THRESHOLD = "threshold"  # the class's acceptance threshold τ when the row was filtered
OWN_PROB = "own_prob"  # probability of the row's own class (AiR's most representative image)

# Columns the embedder stages add to the rows they pass on (never written to a table)
EMBEDDING = "embedding"
PROBS = "probs"
# … and the contrastive encoder's streamed training rows (real ∪ synthetic): a synthetic row
IS_SYNTHETIC = "is_synthetic"

REAL_COLUMNS = (SAMPLE_ID, LABEL, CLASS_NAME, IMAGE, SPLIT, SOURCE, GROUP)
