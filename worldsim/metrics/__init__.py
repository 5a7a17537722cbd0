"""Metrics: video (PSNR, SSIM, LPIPS, SRC, FVD, DreamSim), LPIPS itself, and the navigation
task's success and SPL.
"""
