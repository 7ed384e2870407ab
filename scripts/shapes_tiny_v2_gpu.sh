#!/usr/bin/env bash
# The session-5 GPU pipeline for shapes_tiny (patch-4 architecture), as it ran, detached, on a borrowed H200
# (16 cores): data, a 40-step speed probe, stage 2 sized to ~5 min, stage 3 (text + its text-blind baseline
# side by side) sized to the time left before T_END seconds, then scores and bundles. Needs runs/gpu_clip
# (stage 1, python -m textsam.train.clip_pretrain) in .gpu/gpu_clip. Results under /root/res.
set -x
R=/root/res; mkdir -p $R; cd "$(dirname "$0")/.."
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
t0=$(date +%s); stamp() { echo "[$(( $(date +%s) - t0 ))s] $*"; }
T_END=${T_END:-1300}
stamp start
mkdir -p runs && rm -rf runs/gpu_clip && cp -r .gpu/gpu_clip runs/gpu_clip
python3 -m textsam data synth --out runs/shapes_data_big --train 20000 --workers 16 > $R/data.log 2>&1 || { stamp data failed; exit 1; }
stamp data done
sed -e 's/^log_every = .*/log_every = 5/' -e 's#^output_dir = .*#output_dir = "runs/probe"#' configs/shapes_tiny_v2_sam.toml > runs/probe.toml
python3 -m textsam train runs/probe.toml --steps 40 > $R/probe.log 2>&1 || { stamp probe failed; exit 1; }
S2=$(python3 -c "import json,statistics;t=[json.loads(l)['time'] for l in open('runs/probe/log.jsonl') if 'time' in l][2:];print(statistics.median(t))")
stamp probe done s_per_step=$S2
N2=$(python3 -c "print(max(600, min(2000, int(300/$S2/50)*50)))")
stamp stage2 steps=$N2
python3 -m textsam train configs/shapes_tiny_v2_sam.toml --steps $N2 > $R/sam.log 2>&1 || { stamp sam failed; exit 1; }
stamp sam done
cp runs/v2_sam/model.safetensors $R/v2_sam_model.safetensors; cp runs/v2_sam/log.jsonl $R/v2_sam_log.jsonl
S2=$(python3 -c "import json,statistics;t=[json.loads(l)['time'] for l in open('runs/v2_sam/log.jsonl') if 'time' in l][2:];print(statistics.median(t))")
NOW=$(( $(date +%s) - t0 ))
N3=$(python3 -c "print(max(500, min(5000, int(($T_END-$NOW-200)/(2.2*$S2)/100)*100)))")
stamp stage3 s2=$S2 steps=$N3
python3 -m textsam train configs/shapes_tiny_v2_text_blind.toml --steps $N3 > $R/blind.log 2>&1 &
BP=$!
python3 -m textsam train configs/shapes_tiny_v2_text.toml --steps $N3 > $R/text.log 2>&1 || { stamp text failed; exit 1; }
stamp text done
wait $BP; stamp blind done rc=$?
python3 -m textsam.train.compare runs/v2_text --split test --by-kind --device cuda --out $R/compare_text.json > $R/compare_text.log 2>&1 &
CP=$!
python3 -m textsam.train.compare runs/v2_text_blind --split test --by-kind --device cuda --out $R/compare_blind.json > $R/compare_blind.log 2>&1
wait $CP
stamp compared
python3 -m textsam.train.shapes_tiny --sam runs/v2_sam --text runs/v2_text --clip runs/gpu_clip --data runs/shapes_data_big --out $R/bundle_text.safetensors --text-options '{"grounding": false}' > $R/assemble.log 2>&1
python3 -m textsam.train.shapes_tiny --sam runs/v2_sam --text runs/v2_text_blind --clip runs/gpu_clip --data runs/shapes_data_big --out $R/bundle_blind.safetensors --text-options '{"grounding": false}' >> $R/assemble.log 2>&1
stamp assembled
tar cf $R/small.tar runs/v2_text/log.jsonl runs/v2_text/train_config.json runs/v2_text/text_head.safetensors runs/v2_text_blind/log.jsonl runs/v2_text_blind/train_config.json runs/v2_text_blind/text_head.safetensors runs/v2_sam/train_config.json runs/probe/log.jsonl -C $R pipe.log data.log probe.log sam.log text.log blind.log compare_text.log compare_blind.log assemble.log
stamp ALLDONE
