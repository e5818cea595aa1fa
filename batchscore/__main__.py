from batchscore.cli import console

console()
