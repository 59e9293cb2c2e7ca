from digits_lightning.cli import main

main()
