"""python -m pipelines.tools.ablate GRID [--out DIR] [--model FILE] [--crf-params FILE]"""

from pipelines.tools.ablate.runner import main

main()
