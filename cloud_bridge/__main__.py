from cloud_bridge.cli import main

main(prog_name="cloud-bridge")
