#!/usr/bin/env bash
# lm-evaluation-harness's local-completions model against `gpt2 serve`, on
# a LAMBADA-shaped task over a local JSONL file (no hub): the task file is
# lm-eval's lambada_openai with the dataset swapped for DATA.
#   lm_eval_lambada.sh BASE_URL KEY DATA OUT_DIR
# Exits 77 when lm_eval is not installed.
set -euo pipefail
base=$1 key=$2 data=$3 out=$4
python3 -c "import lm_eval" 2>/dev/null || exit 77
mkdir -p "$out/tasks"
cat > "$out/tasks/lambada_local.yaml" <<YAML
task: lambada_local
dataset_path: json
dataset_kwargs:
  data_files:
    test: $data
test_split: test
output_type: loglikelihood
doc_to_text: "{{text.split(' ')[:-1]|join(' ')}}"
doc_to_target: "{{' '+text.split(' ')[-1]}}"
metric_list:
  - metric: perplexity
    aggregation: perplexity
    higher_is_better: false
  - metric: acc
    aggregation: mean
    higher_is_better: true
YAML
export OPENAI_API_KEY="$key" HF_DATASETS_OFFLINE=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
python3 -m lm_eval --model local-completions \
  --model_args "model=tiny,base_url=$base/v1/completions,tokenizer_backend=remote,auth_token=$key,max_length=100,num_concurrent=1,max_retries=1" \
  --tasks lambada_local --include_path "$out/tasks" --log_samples --output_path "$out/results" \
  > "$out/lm_eval.log" 2>&1 || { cat "$out/lm_eval.log" >&2; exit 1; }
