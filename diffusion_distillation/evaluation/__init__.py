"""--mode=eval and the sample-quality metrics.

loop.py            the one evaluation loop: entries (`plan`), shared
                   noise, each scorer's run(entry, x); `evaluate`
scorers.py         the digits, Inception and fidelity scorers
report.py          results as JSON, Markdown tables and plots
metrics.py         Frechet distance, Inception Score, MSE/PSNR
precision_recall.py  improved precision and recall (k = 3)
reference_network.py the digits reference classifier
fid.py             FID against an ADM-layout reference; the fid command
inception*.py      InceptionV3 of the ADM evaluator: the network, weight
                   files, the graph converter (the inception command),
                   the feature network over the mesh
"""
