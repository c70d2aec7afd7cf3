import MoE
print("r3")
