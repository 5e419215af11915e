"""natvm's host side: fetch the pinned packages, write the initramfs, the deployment files and
the QEMU command line. It copies `appliance/` into the image and never imports it. One module
here is a guest program instead: `reference.py`, the /init of the benchmark's kernel-NAT
reference image, which imports the appliance and is copied into that image only.
"""
